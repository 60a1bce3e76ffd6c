"""Settings: defaults, the shipped file, the environment, errors, secrets and forges."""

from __future__ import annotations

import io
import logging
import re
from decimal import Decimal
from pathlib import Path

import pytest

from bountybot import config
from bountybot.cli import main
from bountybot.config import SHIPPED_CONFIG, ConfigError, Settings, unknown_environment
from bountybot.logs import event, setup_logging

SECRET = "s3cr3t-Value-4242"
TOKEN = "ghp_ThisIsNotARealToken123"
DB_PASSWORD = "pg-Pa55word-77"


# Each test starts from an environment without BOUNTYBOT_* variables.
pytestmark = pytest.mark.usefixtures("no_bountybot_env")


@pytest.fixture
def no_shipped_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As in an installed package run from elsewhere: no config/bountybot.toml to be found."""
    monkeypatch.setattr(config, "SHIPPED_CONFIG", tmp_path / "absent" / "bountybot.toml")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bountybot.toml"
    path.write_text(text)
    return path


# defaults and files ------------------------------------------------------------------------


@pytest.mark.usefixtures("no_shipped_file")
def test_defaults_without_any_file() -> None:
    s = Settings()
    assert s.config_file is None
    assert (s.server.host, s.server.port, s.server.public_url) == ("127.0.0.1", 8080, None)
    assert s.server.max_body_bytes == 25 * 1024 * 1024
    assert s.database.url == "sqlite+aiosqlite:///bountybot.db"
    b = s.bot
    assert (b.login, b.label, b.locale, b.currency) == ("bountybot", "bounty", "en", "EUR")
    assert (b.min_pledge, b.max_pledge) == (Decimal("1"), Decimal("10000"))
    assert (b.claim_days, b.release_after_days, b.fee_percent) == (14, 0, Decimal("0"))
    assert s.github.api_url == "https://api.github.com"
    assert s.github.webhook_secret is None and s.github.token is None
    assert s.github.app_id is None and s.github.private_key_file is None
    assert s.gitlab.url == "https://gitlab.com"
    assert s.gitlab.maintainer_access_level == 40
    assert (s.payments.provider, s.payments.manual_confirm) == ("manual", False)
    assert s.stripe.api_base == "https://api.stripe.com"
    assert s.stripe.api_key is None
    assert s.forges_enabled() == []
    s.check_for_serve()  # the defaults run as they are


def test_shipped_file_is_found_and_equals_the_defaults() -> None:
    shipped = Settings()
    assert shipped.config_file == SHIPPED_CONFIG
    defaults = Settings(config_file=None)
    assert defaults.config_file is None
    assert shipped.model_dump(exclude={"config_file"}) == defaults.model_dump(
        exclude={"config_file"}
    )


def test_shipped_file_documents_every_key() -> None:
    text = SHIPPED_CONFIG.read_text()
    sections = re.split(r"^\[(\w+)\]$", text, flags=re.M)
    body = dict(zip(sections[1::2], sections[2::2], strict=True))
    assert list(body) == list(Settings.SECTIONS)
    for section, key in Settings.iter_keys():
        assert re.search(rf"^(# )?{key} = ", body[section], re.M), f"{section}.{key} undocumented"


def test_config_file_overrides_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nport = 9090\n[bot]\ncurrency = "jpy"\nfee_percent = 2.5\nmin_pledge = 100\n'
        '[gitlab]\nurl = "https://gitlab.example.org/"\n',
    )
    s = Settings.load(path)
    assert s.config_file == path
    assert s.server.port == 9090
    assert s.server.host == "127.0.0.1"  # the rest keeps its default
    assert s.bot.currency == "JPY"
    assert s.bot.fee_percent == Decimal("2.5")  # read as Decimal, never via a float
    assert s.bot.fee_basis_points() == 250
    assert s.gitlab.url == "https://gitlab.example.org"


def test_config_file_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9191\n")
    monkeypatch.setenv("BOUNTYBOT_CONFIG", str(path))
    assert Settings.load().server.port == 9191
    other = tmp_path / "other.toml"
    other.write_text("[server]\nport = 9292\n")
    assert Settings.load(other).server.port == 9292  # --config wins over BOUNTYBOT_CONFIG


# the environment ---------------------------------------------------------------------------


def test_environment_overrides_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, '[github]\napi_url = "https://ghe.example.org/api/v3"\n')
    monkeypatch.setenv("BOUNTYBOT_GITHUB_API_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("BOUNTYBOT_DATABASE_URL", "sqlite+aiosqlite:////tmp/x.db")
    monkeypatch.setenv("BOUNTYBOT_BOT_CLAIM_DAYS", "3")
    monkeypatch.setenv("BOUNTYBOT_BOT_RELEASE_AFTER_DAYS", "7")
    monkeypatch.setenv("BOUNTYBOT_PAYMENTS_MANUAL_CONFIRM", "true")
    monkeypatch.setenv("BOUNTYBOT_SERVER_PUBLIC_URL", "")  # empty means unset
    s = Settings.load(path)
    assert s.github.api_url == "http://127.0.0.1:9000"
    assert s.database.url == "sqlite+aiosqlite:////tmp/x.db"
    assert s.bot.claim_days == 3
    assert s.bot.release_after_days == 7
    assert s.payments.manual_confirm is True
    assert s.server.public_url is None


def test_arguments_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOUNTYBOT_SERVER_PORT", "9000")
    monkeypatch.setenv("BOUNTYBOT_SERVER_HOST", "0.0.0.0")
    s = Settings.load(server={"port": 9001})  # what `serve --port 9001` does
    assert (s.server.host, s.server.port) == ("0.0.0.0", 9001)


def test_unknown_environment_variables_are_reported() -> None:
    environ = {
        "BOUNTYBOT_GITHUB_TOKN": "x",
        "BOUNTYBOT_GITHUB_TOKEN": "x",
        "BOUNTYBOT_LOG_LEVEL": "DEBUG",
        "BOUNTYBOT_CONFIG": "x",
        "HOME": "/root",
    }
    assert unknown_environment(environ) == ["BOUNTYBOT_GITHUB_TOKN"]


# errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "value", "key"),
    [
        ("BOUNTYBOT_SERVER_PORT", "70000", "server.port"),
        ("BOUNTYBOT_SERVER_PORT", "http", "server.port"),
        ("BOUNTYBOT_PAYMENTS_PROVIDER", "paypal", "payments.provider"),
        ("BOUNTYBOT_BOT_CURRENCY", "XYZ", "bot.currency"),
        ("BOUNTYBOT_BOT_LOCALE", "xx_YY", "bot.locale"),
        ("BOUNTYBOT_BOT_CLAIM_DAYS", "-1", "bot.claim_days"),
        ("BOUNTYBOT_BOT_RELEASE_AFTER_DAYS", "-2", "bot.release_after_days"),
        ("BOUNTYBOT_BOT_FEE_PERCENT", "101", "bot.fee_percent"),
        ("BOUNTYBOT_BOT_FEE_PERCENT", "2.555", "bot.fee_percent"),
        ("BOUNTYBOT_BOT_MIN_PLEDGE", "0.001", "min_pledge"),
        ("BOUNTYBOT_BOT_MAX_PLEDGE", "0.5", "max_pledge"),
        ("BOUNTYBOT_GITHUB_API_URL", "api.github.com", "github.api_url"),
        ("BOUNTYBOT_DATABASE_URL", "not a url", "database.url"),
        ("BOUNTYBOT_DATABASE_URL", "sqlite:///bountybot.db", "database.url"),
        ("BOUNTYBOT_DATABASE_URL", "mysql+aiomysql://db/x", "database.url"),
    ],
)
def test_bad_value_is_one_line_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, key: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as e:
        Settings.load()
    message = str(e.value)
    assert key in message
    assert "\n" not in message
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bot\.claim_dayz: unknown key"):
        Settings.load(write(tmp_path, "[bot]\nclaim_dayz = 3\n"))
    with pytest.raises(ConfigError, match=r"githib: unknown key"):
        Settings.load(write(tmp_path, "[githib]\ntoken = 'x'\n"))


def test_broken_or_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(write(tmp_path, "[server\nport = 1\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        Settings.load(tmp_path / "nope.toml")


def test_command_line_reports_config_error_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOUNTYBOT_GITHUB_WEBHOOK_SECRET", SECRET)
    path = write(tmp_path, '[server]\nport = "eighty"\n')
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "server.port" in err and SECRET not in err


# secrets -----------------------------------------------------------------------------------


@pytest.fixture
def secret_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("BOUNTYBOT_GITHUB_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("BOUNTYBOT_GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("BOUNTYBOT_GITLAB_TOKEN", "glpat-" + SECRET)
    monkeypatch.setenv("BOUNTYBOT_STRIPE_API_KEY", "sk_test_" + SECRET)
    monkeypatch.setenv(
        "BOUNTYBOT_DATABASE_URL", f"postgresql+asyncpg://bot:{DB_PASSWORD}@db.example.org/bounty"
    )
    return Settings.load()


def assert_no_secret(text: str) -> None:
    for secret in (SECRET, TOKEN, DB_PASSWORD):
        assert secret not in text


def test_secrets_never_in_repr_str_or_json(secret_settings: Settings) -> None:
    s = secret_settings
    assert s.github.webhook_secret is not None
    assert s.github.webhook_secret.get_secret_value() == SECRET  # still usable
    assert DB_PASSWORD in s.database.url
    for text in (repr(s), str(s), s.model_dump_json(), repr(s.github), repr(s.database)):
        assert_no_secret(text)
    assert "postgresql+asyncpg://bot:***@db.example.org/bounty" in s.model_dump_json()
    assert s.database.display_url() == "postgresql+asyncpg://bot:***@db.example.org/bounty"


def test_secrets_known_to_the_redactor(secret_settings: Settings) -> None:
    assert set(secret_settings.secrets()) == {
        "github.webhook_secret", "github.token", "gitlab.token", "stripe.api_key", "database.url",
    }


def test_secrets_by_path_are_known_to_the_redactor_and_never_echoed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every forge's secrets by repo or group path (`gitlab.project_secrets`,
    `forgejo.repo_secrets`) are secrets like the others: redacted, checked at start, and a
    bad one is never quoted back."""
    s = Settings.load(None, gitlab={"project_secrets": {"Commons/Garden": "gl-" + SECRET}},
                      forgejo={"repo_secrets": {"seeds": "fj-" + SECRET}})
    assert s.secrets() == {"gitlab.project_secrets[commons/garden]": "gl-" + SECRET,
                           "forgejo.repo_secrets[seeds]": "fj-" + SECRET}
    placeholder = Settings.load(None, forgejo={"repo_secrets": {"seeds": "changeme"}})
    with pytest.raises(ConfigError, match=r"forgejo\.repo_secrets\[seeds\] is a placeholder"):
        placeholder.check_for_serve()
    monkeypatch.setenv("BOUNTYBOT_FORGEJO_REPO_SECRETS", f'{{"a/b": "{SECRET}", "a/b/": 1}}')
    with pytest.raises(ConfigError) as e:
        Settings.load()
    assert "forgejo.repo_secrets" in str(e.value)
    assert_no_secret(str(e.value))


def test_bad_secret_input_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOUNTYBOT_DATABASE_URL", f"postgresql://bot:{DB_PASSWORD}@[broken")
    monkeypatch.setenv("BOUNTYBOT_SERVER_PORT", "99999")
    with pytest.raises(ConfigError) as e:
        Settings.load()
    assert "server.port" in str(e.value)
    assert_no_secret(str(e.value))


@pytest.fixture
def root_logging():
    """setup_logging touches the root logger; put it back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_logs_are_readable_lines_with_secrets_redacted(secret_settings: Settings) -> None:
    out = io.StringIO()
    setup_logging(secret_settings, level=logging.INFO, stream=out)
    log = logging.getLogger("bountybot.test")
    event(log, "pledge.recorded", task=3, backer="alice", amount="€20.00")
    event(log, "issue.titled", title='Fix "the" parser')
    log.info("connecting with %s", TOKEN)
    event(log, "forge.call", url=f"https://x:{SECRET}@example.org")
    try:
        raise RuntimeError(f"cannot connect to {secret_settings.database.url}")
    except RuntimeError:
        log.exception("db.failed")
    log.debug("not shown")
    text = out.getvalue()
    lines = text.splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO pledge\.recorded task=3 backer=alice "
        r"amount=€20\.00",
        lines[0],
    )
    assert lines[1].endswith(r'issue.titled title="Fix \"the\" parser"')
    assert lines[2].endswith("INFO connecting with ***")
    assert "url=https://x:***@example.org" in lines[3]
    assert "ERROR db.failed" in text and "RuntimeError: cannot connect to" in text
    assert "not shown" not in text
    assert_no_secret(text)


def test_log_level_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from bountybot.logs import log_level

    assert log_level() == logging.INFO
    monkeypatch.setenv("BOUNTYBOT_LOG_LEVEL", "debug")
    assert log_level() == logging.DEBUG
    monkeypatch.setenv("BOUNTYBOT_LOG_LEVEL", "chatty")
    with pytest.raises(ConfigError, match="BOUNTYBOT_LOG_LEVEL"):
        log_level()


@pytest.mark.parametrize(
    "value", ["changeme", "CHANGEME", " change-me ", "secret", "xxx", "XXXXXX", "placeholder",
              "<your-secret>", "${GITHUB_SECRET}", "   "],
)
def test_placeholder_secret_refused_outside_demo(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("BOUNTYBOT_GITHUB_WEBHOOK_SECRET", value)
    monkeypatch.setenv("BOUNTYBOT_GITHUB_TOKEN", TOKEN)
    s = Settings.load()
    with pytest.raises(ConfigError, match="github.webhook_secret is a placeholder") as e:
        s.check_for_serve()
    assert "BOUNTYBOT_GITHUB_WEBHOOK_SECRET" in str(e.value)
    s.check_for_serve(demo=True)


def test_real_secret_accepted(secret_settings: Settings) -> None:
    secret_settings.check_for_serve()


def test_short_secret_refused_outside_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOUNTYBOT_GITLAB_TOKEN", "tok")
    s = Settings.load()
    with pytest.raises(ConfigError, match="gitlab.token is shorter than 8 characters"):
        s.check_for_serve()
    s.check_for_serve(demo=True)


def test_stripe_needs_its_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOUNTYBOT_PAYMENTS_PROVIDER", "stripe")
    with pytest.raises(ConfigError, match="stripe.api_key is not set"):
        Settings.load().check_for_serve()


# forges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "forges"),
    [
        ({}, []),
        ({"GITHUB_WEBHOOK_SECRET": SECRET}, []),
        ({"GITHUB_TOKEN": TOKEN}, []),
        ({"GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_TOKEN": TOKEN}, ["github"]),
        ({"GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_APP_ID": "42"}, []),
        (
            {"GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_APP_ID": "42",
             "GITHUB_PRIVATE_KEY_FILE": "/etc/key.pem"},
            ["github"],
        ),
        ({"GITLAB_WEBHOOK_SECRET": SECRET}, []),
        ({"GITLAB_WEBHOOK_SECRET": SECRET, "GITLAB_TOKEN": TOKEN}, ["gitlab"]),
        (
            {"GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_TOKEN": TOKEN,
             "GITLAB_WEBHOOK_SECRET": SECRET, "GITLAB_TOKEN": TOKEN},
            ["github", "gitlab"],
        ),
    ],
)
def test_forges_enabled(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], forges: list[str]):
    for name, value in env.items():
        monkeypatch.setenv(f"BOUNTYBOT_{name}", value)
    s = Settings.load()
    assert s.forges_enabled() == forges
    half_done = bool(env) and not forges
    assert bool(s.forge_warnings()) == half_done


def test_app_key_file_must_exist_to_serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("BOUNTYBOT_GITHUB_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("BOUNTYBOT_GITHUB_APP_ID", "42")
    monkeypatch.setenv("BOUNTYBOT_GITHUB_PRIVATE_KEY_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="github.private_key_file"):
        Settings.load().check_for_serve()


# pledge limits -----------------------------------------------------------------------------


def test_pledge_limits_in_minor_units_eur() -> None:
    bot = Settings.load().bot
    assert (bot.min_pledge_minor(), bot.max_pledge_minor()) == (100, 1_000_000)


def test_pledge_limits_in_minor_units_jpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOUNTYBOT_BOT_CURRENCY", "JPY")
    monkeypatch.setenv("BOUNTYBOT_BOT_MIN_PLEDGE", "100")
    monkeypatch.setenv("BOUNTYBOT_BOT_MAX_PLEDGE", "1000000")
    bot = Settings.load().bot
    assert (bot.min_pledge_minor(), bot.max_pledge_minor()) == (100, 1_000_000)
    monkeypatch.setenv("BOUNTYBOT_BOT_MIN_PLEDGE", "0.5")  # yen has no minor unit
    with pytest.raises(ConfigError, match="min_pledge"):
        Settings.load()


def test_pledge_limits_with_cents() -> None:
    bot = Settings.load(bot={"min_pledge": "0.50", "max_pledge": "2500.75"}).bot
    assert (bot.min_pledge_minor(), bot.max_pledge_minor()) == (50, 250_075)


def test_max_below_min_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_pledge"):
        Settings.load(bot={"min_pledge": "50", "max_pledge": "10"})
