"""The service's settings: built-in defaults, then a TOML file, then `BOUNTYBOT_<SECTION>_<KEY>`.

One pydantic-settings class, `Settings`, with a section per table of DESIGN.md's
Configuration. Sources, lowest to highest: the defaults written below, the TOML file (the
shipped `config/bountybot.toml`, or `--config PATH` / `BOUNTYBOT_CONFIG`), the environment,
then keyword arguments (what the command line sets, e.g. `--port`).

The environment is read by our own source rather than pydantic-settings' nested delimiter,
because DESIGN.md names the variables `BOUNTYBOT_GITHUB_API_URL`, not `BOUNTYBOT_GITHUB__API_URL`;
we walk the known sections and keys, so `BOT_RELEASE_AFTER_DAYS` is never ambiguous.

Secrets are `SecretStr`, and the database URL's password is masked in `repr` and JSON, so
printing or dumping the settings shows no secret. Errors are `ConfigError`: one line, naming
the key, never echoing a secret.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from babel import Locale, UnknownLocaleError
from babel.numbers import get_currency_precision, is_currency
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ENV_PREFIX = "BOUNTYBOT_"
CONFIG_ENV = "BOUNTYBOT_CONFIG"
# Read by bountybot.logs, not a setting: logging is set up before (and whether or not) the
# settings load, so that a config error can itself be logged.
LOG_LEVEL_ENV = "BOUNTYBOT_LOG_LEVEL"

# The documented default file, next to the package in a source checkout. An installed wheel has
# no such file, and then the built-in defaults below are the whole configuration.
SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "config" / "bountybot.toml"

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///bountybot.db"
_DATABASE_EXAMPLES = (
    "use sqlite+aiosqlite:///bountybot.db or postgresql+asyncpg://user:password@host/db"
)
MB = 1024 * 1024
MIN_SECRET_LENGTH = 8

# Values people leave in example files. Compared after strip() and lower().
_PLACEHOLDERS = frozenset(
    {
        "changeme", "change-me", "change_me", "change me", "changeit", "secret", "mysecret",
        "placeholder", "password", "todo", "tbd", "none", "null", "example", "test", "dummy",
        "your-secret", "your_secret", "yoursecret", "your-token", "your_token", "...", '""', "''",
    }
)


class ConfigError(ValueError):
    """A configuration the service cannot run with; the message is one line for the operator."""


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***`, for logs and answers."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        # Not parseable by SQLAlchemy: still never show what sits between `user:` and `@`.
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def is_placeholder(value: str) -> bool:
    """True for values that are obviously not a real secret (`changeme`, `xxx`, `<token>` ...)."""
    v = value.strip().lower()
    return (
        v in _PLACEHOLDERS
        or not v
        or re.fullmatch(r"x{3,}|\*+|\.+|-+|0+", v) is not None
        or (v.startswith("<") and v.endswith(">"))
        or (v.startswith("${") and v.endswith("}"))  # an unexpanded shell variable
    )


def env_name(section: str, key: str) -> str:
    """The environment variable that sets `section.key`."""
    return f"{ENV_PREFIX}{section}_{key}".upper()


def to_minor(amount: Decimal, currency: str) -> int:
    """An amount in major units (`Decimal("20.5")`) as an int of minor units for `currency`."""
    scaled = amount.scaleb(get_currency_precision(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more decimals than {currency} allows")
    return int(scaled)


class _Section(BaseModel):
    """A table of the configuration: unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        # `KEY=` in an env file or `key = ""` in TOML means "not set" for optional keys.
        name = info.field_name
        if value == "" and name is not None and cls.model_fields[name].default is None:
            return None
        return value


class ForgeSection(_Section):
    """A forge's table (`[github]`, `[gitlab]`): the forge is on when `enabled()`. Its name is
    the forge's name in `bountybot.forges.registry`; it has a `webhook_secret`."""

    def enabled(self) -> bool:
        raise NotImplementedError

    def write_limits(self) -> tuple[int, int] | None:
        """(writes a minute, writes an hour) for this forge's token, when the forge asks for
        other limits than `[scheduler]`'s."""
        return None

    def sync_every_minutes(self) -> int | None:
        """How often this forge's repos are reconciled, when not `scheduler.sync_minutes`."""
        return None


def _check_http_url(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/") if value else value


class ServerSettings(_Section):
    """Where the HTTP service listens and how it is reached from outside."""

    host: str = Field(default="127.0.0.1", min_length=1)
    # 0 asks the system for a free port; the start line says which one it got.
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None
    # GitHub caps webhook payloads at 25 MB; anything bigger is refused before it is read.
    max_body_bytes: int = Field(default=25 * MB, ge=1024)
    # Webhook body bytes read at once before their signature or token is checked, across all
    # doors: what strangers can make the service hold. Past it a request waits up to
    # unverified_body_wait_seconds for room, then gets 503 with Retry-After.
    unverified_body_budget: int = Field(default=64 * MB, ge=1024)
    unverified_body_wait_seconds: float = Field(default=2.0, ge=0, le=60)
    # Public reads (exports, statements, ledgers, task lists) at once; they have a pool of
    # database connections of their own, so however many arrive, webhooks are still stored.
    read_concurrency: int = Field(default=4, ge=1, le=64)
    # How long a public read over that bound waits for its turn before a 503 with Retry-After.
    read_wait_seconds: float = Field(default=2.0, ge=0, le=60)
    # Rendered public pages (index, repo, monthly appeal, feeds) are kept this long and then
    # refreshed in the background (bountybot/web/cache.py); 0 turns the cache off. At most 60,
    # the max-age the pages already send: another replica's change shows within twice this.
    page_cache_seconds: float = Field(default=10.0, ge=0, le=60)
    # A connection has this long to send a whole request head (line and headers), from its
    # opening or from its head's first byte: no socket stays open by sending nothing, or a
    # byte at a time (slowloris).
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # A request body (a webhook's payload) has this long to arrive once its head is in.
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # An idle keep-alive connection is closed after this long.
    keepalive_timeout_seconds: float = Field(default=75.0, gt=0, le=3600)
    # Open connections at most; past it an idle one is closed to make room, else the new one.
    max_connections: int = Field(default=1000, ge=1)
    # /healthz answers 503 "stalled" when a due delivery has waited longer than this.
    queue_stall_seconds: int = Field(default=300, ge=1)
    # When set, /metrics answers only `Authorization: Bearer <metrics_token>` (else 401).
    metrics_token: SecretStr | None = None

    _public_url_is_http = field_validator("public_url")(_check_http_url)

    @model_validator(mode="after")
    def _budget_fits_a_body(self) -> ServerSettings:
        if self.unverified_body_budget < self.max_body_bytes:
            raise ValueError(
                f"unverified_body_budget ({self.unverified_body_budget}) is below"
                f" max_body_bytes ({self.max_body_bytes}): a body that large could never be read"
            )
        return self


class DatabaseSettings(_Section):
    """The database, as an SQLAlchemy async URL (aiosqlite or asyncpg)."""

    url: str = DEFAULT_DATABASE_URL

    @field_validator("url")
    @classmethod
    def _parseable(cls, value: str) -> str:
        # Not echoed: a malformed URL may still hold a password.
        try:
            driver = make_url(value).drivername
        except ArgumentError:
            raise ValueError(f"not a database URL ({_DATABASE_EXAMPLES})") from None
        if driver not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
            raise ValueError(f"unsupported driver {driver!r} ({_DATABASE_EXAMPLES})")
        return value

    @property
    def password(self) -> str | None:
        """The URL's password, if any (for the log redactor)."""
        try:
            return make_url(self.url).password
        except ArgumentError:
            return None

    def display_url(self) -> str:
        """The URL with its password masked."""
        return mask_url(self.url)

    @field_serializer("url", when_used="json")
    def _mask_in_json(self, value: str) -> str:
        return mask_url(value)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield "url", self.display_url()


class BotSettings(_Section):
    """How the bot behaves on the forges: its name, label, language, currency and limits."""

    login: str = Field(default="bountybot", min_length=1)
    label: str = Field(default="bounty", min_length=1)
    locale: str = "en"
    currency: str = "EUR"
    # Major units as written by people ("1", "10000"), Decimal so no float ever touches them.
    min_pledge: Decimal = Field(default=Decimal("1"), gt=0, allow_inf_nan=False)
    max_pledge: Decimal = Field(default=Decimal("10000"), gt=0, allow_inf_nan=False)
    claim_days: int = Field(default=14, ge=1)
    release_after_days: int = Field(default=0, ge=0)
    fee_percent: Decimal = Field(default=Decimal("0"), ge=0, le=100, decimal_places=2)
    # What the public pages and the public API say of backers: "names" (each login with its
    # amount) or "count" (how many, never who). The bot's comments on the forge are unchanged.
    public_backers: Literal["names", "count"] = "names"

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, value: str) -> str:
        try:
            Locale.parse(value.replace("-", "_"))
        except (UnknownLocaleError, ValueError, TypeError):
            raise ValueError(f"unknown locale {value!r} (e.g. en, fr, de_CH)") from None
        return value

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        code = value.strip().upper()
        if not is_currency(code):
            raise ValueError(f"unknown currency {value!r} (an ISO 4217 code such as EUR, USD)")
        return code

    @model_validator(mode="after")
    def _pledge_limits(self) -> BotSettings:
        for key in ("min_pledge", "max_pledge"):
            amount = getattr(self, key)
            try:
                to_minor(amount, self.currency)
            except ValueError:
                raise ValueError(
                    f"{key} = {amount} has more decimals than {self.currency} allows"
                ) from None
        if self.max_pledge < self.min_pledge:
            raise ValueError(
                f"max_pledge ({self.max_pledge}) is below min_pledge ({self.min_pledge})"
            )
        return self

    def min_pledge_minor(self) -> int:
        """The smallest pledge, in minor units of the currency (100 for 1 EUR, 1 for 1 JPY)."""
        return to_minor(self.min_pledge, self.currency)

    def max_pledge_minor(self) -> int:
        """The largest pledge, in minor units of the currency."""
        return to_minor(self.max_pledge, self.currency)

    def fee_basis_points(self) -> int:
        """The fee in hundredths of a percent (2.5 % is 250), as the rules' Policy wants it."""
        return int(self.fee_percent * 100)


def _secret_paths(value: Any, env: str, example: str) -> Any:
    """Webhook secrets by repo, project or group path (`[gitlab] project_secrets`, `[forgejo]
    repo_secrets`): paths lower-cased (forges compare them without case), none twice, none
    empty. In the environment (`env`): a JSON object. Never quotes a value: they are secrets."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise ValueError(f'{env} is not JSON: write {{"{example}": "secret", ...}}') from None
    if not isinstance(value, dict):
        raise ValueError("must map paths to secrets")
    paths: dict[str, Any] = {}
    for path, secret in value.items():
        # Payloads spell paths as they were created.
        key = str(path).strip("/").lower()
        if not re.fullmatch(r"[^\s/]+(/[^\s/]+)*", key) or len(key) > 512:
            raise ValueError(f"{str(path)[:80]!r} is not a path like {example}")
        if key in paths:
            raise ValueError(f"{key!r} is given twice")
        text = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        if isinstance(text, str) and not text.strip():
            # An empty secret would let a webhook with an empty token speak for the repo.
            raise ValueError(f"the secret of {key!r} is empty: give one, or remove the line")
        paths[key] = secret
    return paths


class GitHubSettings(ForgeSection):
    """github.com or GitHub Enterprise: a webhook secret and an app or a personal token."""

    api_url: str = "https://api.github.com"
    webhook_secret: SecretStr | None = None
    app_id: int | None = Field(default=None, ge=1)
    private_key_file: Path | None = None
    token: SecretStr | None = None

    _api_url_is_http = field_validator("api_url")(_check_http_url)

    def enabled(self) -> bool:
        has_app = self.app_id is not None and self.private_key_file is not None
        return self.webhook_secret is not None and (self.token is not None or has_app)


class GitLabSettings(ForgeSection):
    """gitlab.com or a self-managed GitLab: a webhook secret and a token."""

    url: str = "https://gitlab.com"
    webhook_secret: SecretStr | None = None
    token: SecretStr | None = None
    # Who counts as a maintainer: 40 is Maintainer, 50 Owner (GitLab's access levels).
    maintainer_access_level: int = Field(default=40, ge=10, le=60)
    # Webhook secrets of single projects or groups, by path (`group/sub/project`, `group`), for
    # hooks their maintainers set up: such a secret is good only for deliveries about a
    # project at or under its path. In the environment: a JSON object.
    project_secrets: dict[str, SecretStr] = Field(default_factory=dict)

    _url_is_http = field_validator("url")(_check_http_url)

    _project_secrets = field_validator("project_secrets", mode="before")(
        lambda value: _secret_paths(value, "BOUNTYBOT_GITLAB_PROJECT_SECRETS", "group/project"))

    def enabled(self) -> bool:
        return self.webhook_secret is not None and self.token is not None


class ForgejoSettings(ForgeSection):
    """Codeberg, or any Forgejo or Gitea instance: a webhook secret and the bot account's
    token. Forgejo sends a delivery once (no retry), so reconciliation runs more often here."""

    # The instance's root, as people open it in a browser.
    url: str = "https://codeberg.org"
    webhook_secret: SecretStr | None = None
    token: SecretStr | None = None
    # Webhook secrets of single repos or owners (a user or an organization), by path
    # (`owner/repo`, `owner`), for hooks their own admins set up: a delivery signed with one is
    # taken only if it is about that repo, or a repo of that owner. In the environment: JSON.
    repo_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    # Codeberg asks bots to be gentle: writes (comments, edits, reactions) per token.
    writes_per_minute: int = Field(default=30, ge=1)
    writes_per_hour: int = Field(default=450, ge=1)
    # Forgejo never redelivers a failed webhook: reconciliation is what finds it (0: off).
    sync_minutes: int = Field(default=5, ge=0)

    _url_is_http = field_validator("url")(_check_http_url)
    _repo_secrets = field_validator("repo_secrets", mode="before")(
        lambda value: _secret_paths(value, "BOUNTYBOT_FORGEJO_REPO_SECRETS", "owner/repo"))

    def enabled(self) -> bool:
        return self.webhook_secret is not None and self.token is not None

    def write_limits(self) -> tuple[int, int] | None:
        return self.writes_per_minute, self.writes_per_hour

    def sync_every_minutes(self) -> int | None:
        return self.sync_minutes


class PaymentsSettings(_Section):
    """Who moves the real money: nobody (`manual`, the bot only keeps the books) or Stripe."""

    provider: Literal["manual", "stripe"] = "manual"
    manual_confirm: bool = False


class StripeSettings(_Section):
    """Stripe credentials, used when `payments.provider` is `stripe`."""

    api_key: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    # The signing secret of a second endpoint at the same URL for Connect events (a developer's
    # account becoming ready: `account.updated`); Stripe sends those to Connect endpoints only.
    connect_webhook_secret: SecretStr | None = None
    api_base: str = "https://api.stripe.com"

    _api_base_is_http = field_validator("api_base")(_check_http_url)


class SchedulerSettings(_Section):
    """The sweeps: how often time-driven work (claim reminders and expiry, funding deadlines,
    payout release, retries) is looked for, and how often each repo is reconciled."""

    sweep_seconds: int = Field(default=60, ge=1)
    sync_minutes: int = Field(default=10, ge=0)
    # Forge writes (comments, edits, reactions) per installation or token. GitHub allows 80 a
    # minute and 500 an hour for content; the defaults keep a tenth in hand.
    writes_per_minute: int = Field(default=72, ge=1)
    writes_per_hour: int = Field(default=450, ge=1)
    # A forge write is parked as dead after this many tries (see `bountybot outbox`).
    outbox_max_attempts: int = Field(default=8, ge=1)
    # How long a replica holds a forge write it is sending; if it dies meanwhile, another
    # sends it once this is over (finding it on the forge if it was sent). A forge call never
    # starts after half of it, so it must stay well above a slow forge request (15 s).
    outbox_lease_seconds: int = Field(default=120, ge=5)


class FundingManifest(_Section):
    """One repo's funding.json (FLOSS/fund v1), served at `/{forge}/{path}/-/funding.json`
    only when its maintainers asked for it: it publishes a contact email. The table's key is
    `forge:path` (`[funding."github:owner/repo"]`), the path compared without case."""

    email: str = Field(min_length=3, max_length=250, pattern=r"^[^@\s]+@[^@\s]+$")
    name: str = Field(min_length=1, max_length=250)
    # FLOSS/fund's entity type and role: individual, group, organisation, other; owner,
    # steward, maintainer, contributor, other.
    type: Literal["individual", "group", "organisation", "other"] = "group"
    role: Literal["owner", "steward", "maintainer", "contributor", "other"] = "maintainer"
    description: str = Field(default="", max_length=2000)
    # The entity's web page (default: the repo's page on this instance).
    webpage_url: str | None = None
    # SPDX ids (`spdx:AGPL-3.0-or-later`), at most 5; tags of floss.fund's list, at most 10.
    licenses: list[str] = Field(default_factory=list, max_length=5)
    tags: list[str] = Field(default_factory=list, max_length=10)

    _webpage_is_http = field_validator("webpage_url")(_check_http_url)

    @field_validator("tags")
    @classmethod
    def _tag_shape(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not re.fullmatch(r"[a-z0-9-]{1,32}", tag):
                raise ValueError(f"tag {tag!r} must be lowercase letters, digits and dashes")
        return value


_Item = TypeVar("_Item")


def _forge_path_keys(value: dict[str, _Item]) -> dict[str, _Item]:
    """A table keyed by `forge:path`, keyed in lowercase (paths are compared without case):
    a key that is no such name, or that is given twice, is an error."""
    found: dict[str, _Item] = {}
    for key, item in value.items():
        if not re.fullmatch(rf"(?:{'|'.join(forge_sections())}):[^\s:/][^\s:]*", key):
            raise ValueError(f"{key!r} is not forge:path (e.g. github:owner/repo)")
        if key.lower() in found:
            raise ValueError(f"{key!r} is given twice (paths are compared without case)")
        found[key.lower()] = item
    return found


class RepoPrivacy(_Section):
    """What the public may see of one repo: `[repos."forge:path"]` (the path compared without
    case). `public_amounts = false`: its pages, badges and public API show percentages of the
    goal only, never an amount."""

    public_amounts: StrictBool = True


class _EnvSource(PydanticBaseSettingsSource):
    """`BOUNTYBOT_<SECTION>_<KEY>` for every known key, and `BOUNTYBOT_CONFIG` for the file."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    # pydantic's signature (PydanticBaseSettingsSource): `field` is not needed here.
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # noqa: ARG002
        return None, field_name, False  # unused: __call__ does the whole walk

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for section, key in Settings.iter_keys():
            value = self.environ.get(env_name(section, key))
            if value:  # an empty variable is unset, as in most env-file tooling
                found.setdefault(section, {})[key] = value
        if self.environ.get(CONFIG_ENV):
            found["config_file"] = self.environ[CONFIG_ENV]
        return found


class _TomlSource(PydanticBaseSettingsSource):
    """The TOML file: the one asked for (argument or `BOUNTYBOT_CONFIG`), else the shipped one."""

    # pydantic's signature (PydanticBaseSettingsSource): `field` is not needed here.
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # noqa: ARG002
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        # Higher sources ran first, so an explicit `config_file` is already in current_state.
        # An explicit `config_file=None` means no file at all: defaults and environment only.
        asked = self.current_state.get("config_file")
        if asked:
            path = Path(asked)
        elif "config_file" in self.current_state:
            return {}
        elif SHIPPED_CONFIG.is_file():
            path = SHIPPED_CONFIG
        else:
            return {}
        try:
            with path.open("rb") as f:
                # parse_float=Decimal: `fee_percent = 2.5` must never become a binary float.
                data = tomllib.load(f, parse_float=Decimal)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        if "config_file" in data:
            raise ConfigError(f"config file {path}: config_file is not a configuration key")
        data["config_file"] = path
        return data


class Settings(BaseSettings):
    """Everything the service is configured with; see config/bountybot.toml for each key."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    # The TOML file these settings were read from (None: built-in defaults and environment only).
    config_file: Path | None = None
    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    bot: BotSettings = Field(default_factory=BotSettings)
    github: GitHubSettings = Field(default_factory=GitHubSettings)
    gitlab: GitLabSettings = Field(default_factory=GitLabSettings)
    forgejo: ForgejoSettings = Field(default_factory=ForgejoSettings)
    payments: PaymentsSettings = Field(default_factory=PaymentsSettings)
    stripe: StripeSettings = Field(default_factory=StripeSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    # Per repo, `forge:path` -> its funding.json (opt-in; from the TOML file only).
    funding: dict[str, FundingManifest] = Field(default_factory=dict)

    _funding_keys = field_validator("funding")(_forge_path_keys)
    # Per repo, `forge:path` -> what the public may see of it (from the TOML file only).
    repos: dict[str, RepoPrivacy] = Field(default_factory=dict)

    _repos_keys = field_validator("repos")(_forge_path_keys)

    SECTIONS: ClassVar[tuple[str, ...]] = (
        "server", "database", "bot", "github", "gitlab", "forgejo", "payments", "stripe",
        "scheduler",
    )

    def __init__(self, **values: Any) -> None:
        # `from None`: pydantic's own message quotes the offending input, which may be a secret.
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ConfigError(_describe(e)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - pydantic passes these by keyword
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first. No dotenv and no secrets dir: one file, one environment, no surprises.
        return (init_settings, _EnvSource(settings_cls, os.environ), _TomlSource(settings_cls))

    @classmethod
    def iter_keys(cls) -> Iterator[tuple[str, str]]:
        """Every (section, key) pair, in the order of the documentation."""
        for section in cls.SECTIONS:
            for key in _section_model(section).model_fields:
                yield section, key

    @classmethod
    def load(
        cls, config_file: str | Path | None = None, **overrides: Any
    ) -> Settings:
        """Defaults, then the file (`config_file`, else `BOUNTYBOT_CONFIG`, else the shipped
        one if present), then the environment, then `overrides` (`server={"port": 9000}`)."""
        if config_file is not None:
            overrides["config_file"] = config_file
        return cls(**overrides)

    def secrets(self) -> dict[str, str]:
        """Every secret that is set, by key (`github.token`), including the database password."""
        found: dict[str, str] = {}
        for section, key in self.iter_keys():
            value = getattr(getattr(self, section), key)
            if isinstance(value, SecretStr) and value.get_secret_value():
                found[f"{section}.{key}"] = value.get_secret_value()
            elif isinstance(value, dict):  # secrets by path (`gitlab.project_secrets`)
                for path, secret in value.items():
                    if isinstance(secret, SecretStr) and secret.get_secret_value():
                        found[f"{section}.{key}[{path}]"] = secret.get_secret_value()
        if self.database.password:
            found["database.url"] = self.database.password
        return found

    def public_amounts(self, forge: str, path: str) -> bool:
        """Whether the public may see the amounts of the repo at `path` on `forge`."""
        found = self.repos.get(f"{forge}:{path}".lower())
        return found is None or found.public_amounts

    def forges_enabled(self) -> list[str]:
        """The forges whose webhook secret and credentials are set, e.g. `["github"]`."""
        return [name for name in forge_sections() if getattr(self, name).enabled()]

    def forge_warnings(self) -> list[str]:
        """Forges configured half-way: worth a warning, since they stay off."""
        warnings = []
        gh = self.github
        if not gh.enabled() and (gh.webhook_secret or gh.token or gh.app_id or gh.private_key_file):
            warnings.append(
                "github is off: it needs github.webhook_secret and either github.token or "
                "github.app_id with github.private_key_file"
            )
        if (self.gitlab.webhook_secret is None) != (self.gitlab.token is None):
            warnings.append("gitlab is off: it needs both gitlab.webhook_secret and gitlab.token")
        if (self.forgejo.webhook_secret is None) != (self.forgejo.token is None):
            warnings.append(
                "forgejo is off: it needs both forgejo.webhook_secret and forgejo.token")
        return warnings

    def check_for_serve(self, *, demo: bool = False) -> None:
        """Refuse, with a ConfigError, what must not run as a service: placeholder secrets
        (except in the demo, which ships with made-up ones), a missing app key, Stripe without
        its keys."""
        problems = []
        if not demo:
            for key, value in self.secrets().items():
                if key == "database.url":
                    continue
                section, name = key.partition("[")[0].split(".")
                if is_placeholder(value):
                    problems.append(
                        f"{key} is a placeholder, not a secret: set a real one "
                        f"(e.g. {env_name(section, name)})"
                    )
                elif len(value.strip()) < MIN_SECRET_LENGTH:
                    # Guessable, and the log redactor would blank that string wherever it
                    # appears (a token "tok" turns every "token" in the logs into "***en").
                    problems.append(
                        f"{key} is shorter than {MIN_SECRET_LENGTH} characters: set a real "
                        f"secret (e.g. {env_name(section, name)})"
                    )
        pk = self.github.private_key_file
        if pk is not None and self.github.app_id is not None and not pk.is_file():
            problems.append(f"github.private_key_file {pk} is not a readable file")
        if self.payments.provider == "stripe":
            for key in ("api_key", "webhook_secret"):
                if getattr(self.stripe, key) is None:
                    problems.append(
                        f"payments.provider is stripe but stripe.{key} is not set "
                        f"({env_name('stripe', key)})"
                    )
            if self.server.public_url is None:
                # Stripe's payment and onboarding pages send people back to an address, and
                # Stripe's webhooks need one: {public_url}/webhooks/stripe.
                problems.append(
                    "payments.provider is stripe but server.public_url is not set "
                    f"({env_name('server', 'public_url')}): Stripe sends people and webhooks"
                    " back to it"
                )
        if problems:
            raise ConfigError("; ".join(problems))


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """`BOUNTYBOT_*` variables that set nothing (a typo such as `BOUNTYBOT_GITHUB_TOKN`)."""
    environ = os.environ if environ is None else environ
    known = {env_name(s, k) for s, k in Settings.iter_keys()} | {CONFIG_ENV, LOG_LEVEL_ENV}
    return sorted(n for n in environ if n.startswith(ENV_PREFIX) and n not in known)


def _section_model(section: str) -> type[BaseModel]:
    annotation = Settings.model_fields[section].annotation
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation


# Keys whose input must never be quoted back in an error message.
_SECRET_KEYS = {
    f"{s}.{k}"
    for s, k in Settings.iter_keys()
    if _section_model(s).model_fields[k].annotation in (SecretStr | None, dict[str, SecretStr])
} | {"database.url"}


def _describe(error: ValidationError) -> str:
    """One line naming each bad key and what is wrong with it, quoting only harmless input."""
    parts = []
    for item in error.errors(include_url=False):
        key = ".".join(str(p) for p in item["loc"]) or "settings"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        elif (".".join(key.split(".")[:2]) not in _SECRET_KEYS and item["loc"]
              and len(item["loc"]) > 1):
            value = item.get("input")
            if isinstance(value, str | int | Decimal | bool) and repr(value) not in msg:
                msg = f"{msg} (got {value!r})"
        parts.append(f"{key}: {msg}")
    return "invalid configuration: " + "; ".join(parts)


def forge_sections() -> tuple[str, ...]:
    """The names of the forges' tables, in the order `Settings` declares them."""
    return tuple(name for name, field in Settings.model_fields.items()
                 if isinstance(field.annotation, type)
                 and issubclass(field.annotation, ForgeSection))
