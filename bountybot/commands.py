"""Reading bot commands (`/pledge 20`, `@bountybot claim`...) out of an issue comment."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

from bountybot.command_text import visible_lines
from bountybot.i18n import register, translate
from bountybot.money import (
    SYMBOLS,
    AmountError,
    Money,
    known_currencies,
    parse_amount,
    parse_percent,
    shown,
)


class CommandName(StrEnum):
    PLEDGE = "pledge"
    WITHDRAW = "withdraw"
    GOAL = "goal"
    DEADLINE = "deadline"
    CLAIM = "claim"
    UNCLAIM = "unclaim"
    AWARD = "award"
    CANCEL = "cancel"
    DISPUTE = "dispute"
    PAYOUT_ACCOUNT = "payout-account"
    STATUS = "status"
    HELP = "help"


ALIASES: dict[str, CommandName] = {"bounty": CommandName.GOAL}
_NAMES: dict[str, CommandName] = {name.value: name for name in CommandName} | ALIASES
NO_ARGUMENTS = frozenset(
    {CommandName.WITHDRAW, CommandName.CLAIM, CommandName.CANCEL, CommandName.STATUS,
     CommandName.HELP, CommandName.PAYOUT_ACCOUNT}
)
# A longer line is not a command anyone typed; refusing it keeps parsing cheap.
MAX_LINE = 500
LOGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,38}")
# No clock in a parser: an example date far enough ahead to read as "a future date".
EXAMPLE_DATE = "2030-06-30"


@dataclass(frozen=True)
class AwardShare:
    """One developer in `/award`: a fixed amount, a percentage (basis points), or neither, which
    means "the rest" (at most one share per award has neither)."""

    login: str
    amount: Money | None = None
    percent_bp: int | None = None

    def __post_init__(self) -> None:
        if self.amount is not None and self.percent_bp is not None:
            raise ValueError("a share is an amount or a percentage, not both")


@dataclass(frozen=True)
class Command:
    """A command as read: `line` is 1-based in the comment, `raw` the line as written."""

    name: CommandName
    line: int
    raw: str
    amount: Money | None = None
    deadline: date | None = None
    target: str | None = None
    shares: tuple[AwardShare, ...] = ()
    # What follows the command word, for commands that take free text (`/dispute <reason>`).
    text: str | None = None


@dataclass(frozen=True)
class CommandRefusal:
    """A line meant as a command that cannot be read; `message(locale)` is the reply."""

    line: int
    raw: str
    code: str
    params: dict[str, Any] = field(default_factory=dict)

    def message(self, locale: str) -> str:
        if self.code.startswith(("amount.", "percent.")):
            return AmountError(self.code, self.params).message(locale)
        fields = {key: shown(value) if isinstance(value, str) else value
                  for key, value in self.params.items()}
        return translate(locale, self.code, **{**fields, "raw": shown(self.raw)})


class _Refuse(Exception):
    """Raised inside the argument readers, turned into a CommandRefusal by the caller."""

    def __init__(self, code: str, **params: Any) -> None:
        super().__init__(code)
        self.code = code
        self.params = params


def _lookup(word: str) -> CommandName | None:
    return _NAMES.get(word.lower()) if word.isascii() else None


def _is_currency(token: str) -> bool:
    """A token that can only be the currency half of a split amount (`20 EUR`, `€ 30`)."""
    if token in SYMBOLS:
        return True
    return (len(token) == 3 and token.isascii() and token.isalpha()
            and (token.isupper() or token.upper() in known_currencies()))


def _amount_text(tokens: list[str]) -> tuple[str, list[str]]:
    """The words that make the amount (`20`, `20 EUR`, `€ 20`, `12,5 %`), and the words after."""
    # Words that start with a digit belong together: `1 000` is one amount with a thousands
    # separator (refused as such), not `1` followed by a stray word.
    n = 1
    while n < len(tokens) and tokens[n][0] in "0123456789":
        n += 1
    if n < len(tokens) and (tokens[n] == "%" or _is_currency(tokens[n])):
        n += 1
    return " ".join(tokens[:n]), tokens[n:]


def _login(token: str, example: str) -> str:
    login = token.rstrip(",.;:")  # `/unclaim @dev.` ends a sentence, not the login
    if not login.startswith("@") or not LOGIN.fullmatch(login[1:]):
        raise _Refuse("command.bad_login", value=token, example=example)
    return login[1:]


def _amount(name: CommandName, word: str, tokens: list[str], currency: str,
            min_pledge: int | None, max_pledge: int | None) -> Money:
    text, extra = _amount_text(tokens)
    limits = (min_pledge, max_pledge) if name == CommandName.PLEDGE else (None, None)
    amount = parse_amount(text, currency, min_minor=limits[0], max_minor=limits[1], command=word)
    if extra:
        raise _Refuse("command.extra_text", command=word, example=f"/{word} {text}")
    return amount


def _deadline(tokens: list[str]) -> date:
    if not tokens:
        raise _Refuse("command.deadline_missing", example=EXAMPLE_DATE)
    value = tokens[0]
    m = re.fullmatch(r"([0-9]{4})-([0-9]{2})-([0-9]{2})", value)
    day = _date(m[1], m[2], m[3]) if m else None
    if day is None:
        raise _Refuse("command.bad_date", value=value, example=_date_example(value))
    if len(tokens) > 1:
        raise _Refuse("command.extra_text", command="deadline", example=f"/deadline {value}")
    return day


def _date(year: str, month: str, day: str) -> date | None:
    try:
        return date(int(year), int(month), int(day))
    except ValueError:
        return None


def _date_example(value: str) -> str:
    """`31/12/2026` becomes `2026-12-31` when only one reading of it is a real day."""
    m = re.fullmatch(r"([0-9]{1,2})[/.]([0-9]{1,2})[/.]([0-9]{4})", value)
    if m is None:
        return EXAMPLE_DATE
    readings = {d for d in (_date(m[3], m[2], m[1]), _date(m[3], m[1], m[2])) if d is not None}
    return readings.pop().isoformat() if len(readings) == 1 else EXAMPLE_DATE


def _unclaim_target(tokens: list[str]) -> str | None:
    if not tokens:
        return None
    target = _login(tokens[0], "/unclaim @alice")
    if len(tokens) > 1:
        raise _Refuse("command.extra_text", command="unclaim", example=f"/unclaim @{target}")
    return target


def _share(login: str, tokens: list[str], currency: str) -> AwardShare:
    if not tokens:
        return AwardShare(login)
    text, extra = _amount_text(tokens)
    if extra:
        raise _Refuse("command.award_share", value=" ".join(tokens), login=login)
    if text.endswith("%"):
        return AwardShare(login, percent_bp=parse_percent(text))
    return AwardShare(login, amount=parse_amount(text, currency, command=f"award @{login}"))


def _award(tokens: list[str], currency: str) -> tuple[AwardShare, ...]:
    if not tokens:
        raise _Refuse("command.award_missing")
    groups: list[tuple[str, list[str]]] = []
    for token in tokens:
        if token.startswith("@") or not groups:
            groups.append((_login(token, "/award @alice 60% @bob 40%"), []))
        else:
            groups[-1][1].append(token)
    shares = tuple(_share(login, rest, currency) for login, rest in groups)
    seen: dict[str, str] = {}
    for share in shares:
        # Forge logins are case-insensitive: @Alice and @alice are one person.
        if share.login.lower() in seen:
            raise _Refuse("command.award_duplicate", login=share.login)
        seen[share.login.lower()] = share.login
    rest = [s.login for s in shares if s.amount is None and s.percent_bp is None]
    if len(rest) > 1:
        raise _Refuse("command.award_rest", first=rest[0], second=rest[1])
    return shares


def _read(name: CommandName, word: str, args: str, number: int, raw: str, currency: str,
          min_pledge: int | None, max_pledge: int | None) -> Command:
    tokens = args.split()
    if name in NO_ARGUMENTS:
        if tokens:
            raise _Refuse("command.no_arguments", command=word)
        return Command(name, number, raw)
    if name in (CommandName.PLEDGE, CommandName.GOAL):
        amount = _amount(name, word, tokens, currency, min_pledge, max_pledge)
        return Command(name, number, raw, amount=amount)
    if name == CommandName.DEADLINE:
        return Command(name, number, raw, deadline=_deadline(tokens))
    if name == CommandName.UNCLAIM:
        return Command(name, number, raw, target=_unclaim_target(tokens))
    if name == CommandName.DISPUTE:
        if not tokens:
            raise _Refuse("command.dispute_reason")
        return Command(name, number, raw, text=" ".join(tokens)[:MAX_LINE])
    return Command(name, number, raw, shares=_award(tokens, currency))


def _mention_rest(line: str, bot: str) -> str | None:
    """What follows `@<bot>` at the start of the line (None when the line does not start so)."""
    if not bot or not line.startswith("@") or line[1:1 + len(bot)].lower() != bot.lower():
        return None
    rest = line[1 + len(bot):].removeprefix("[bot]")
    if rest[:1] in (",", ":"):
        rest = rest[1:]
    elif rest and not rest[0].isspace():
        return None  # @bountybot2 is somebody else
    rest = rest.strip()
    return rest[1:] if rest.startswith("/") else rest


def _split_word(text: str) -> tuple[str, str]:
    parts = text.split(maxsplit=1)
    if not parts:
        return "", ""
    return parts[0], parts[1] if len(parts) > 1 else ""


def command_named(line: str, bot_login: str) -> CommandName | None:
    """The command a line names, whether it could be read or not (`/pledge abc` is a pledge,
    `@bountybot bounty 5` a goal); None when its word is none of ours. For the logs, which
    say which commands were refused by name, never by what people wrote."""
    raw = line.strip()
    bot = bot_login.strip().removeprefix("@").removesuffix("[bot]")
    mentioned = _mention_rest(raw, bot)
    if mentioned is not None:
        return _lookup(_split_word(mentioned)[0])
    if raw.startswith("/"):
        return _lookup(_split_word(raw[1:])[0])
    return None


def parse_comment(text: str, *, bot_login: str, currency: str, min_pledge: int | None = None,
                  max_pledge: int | None = None, max_commands: int = 10,
                  ) -> list[Command | CommandRefusal]:
    """The commands of a comment in line order, each read or refused; never raises on input."""
    # A GitHub App comments as `name[bot]` but is mentioned as `@name`.
    bot = bot_login.strip().removeprefix("@").removesuffix("[bot]")
    found: list[Command | CommandRefusal] = []
    for number, line in visible_lines(text):
        raw = line.strip()
        mentioned = _mention_rest(raw, bot)
        if mentioned is not None:
            word, args = _split_word(mentioned)
            name = _lookup(word)
        elif raw.startswith("/") and raw[1:2].strip():
            word, args = _split_word(raw[1:])
            name = _lookup(word)
            if name is None:
                continue  # another bot's slash command (/assign, /lgtm): not ours to refuse
        else:
            continue
        word = word.lower()
        if len(found) >= max_commands:
            # One refusal for all the rest: a comment of thousands of command lines costs no
            # more to answer (and to record) than one of eleven.
            found.append(CommandRefusal(number, raw[:MAX_LINE], "command.too_many",
                                        {"max": max_commands}))
            break
        if len(raw) > MAX_LINE:
            found.append(CommandRefusal(number, raw, "command.too_long", {"max": MAX_LINE}))
        elif name is None:
            found.append(CommandRefusal(number, raw, "command.unknown", {"word": word}))
        else:
            try:
                found.append(_read(name, word, args, number, raw, currency, min_pledge,
                                   max_pledge))
            except (_Refuse, AmountError) as refusal:
                found.append(CommandRefusal(number, raw, refusal.code, dict(refusal.params)))
    return found


_HELP = [
    ("pledge", "`/pledge <amount>`: pledge money to this task, or raise your pledge"
     " (`/pledge 20`)",
     "`/pledge <montant>` : promettre un don pour cette tâche, ou augmenter le vôtre"
     " (`/pledge 20`)"),
    ("withdraw", "`/withdraw`: take your pledge back, until someone claims the task",
     "`/withdraw` : retirer votre promesse de don, tant que personne n'a réservé la tâche"),
    ("goal", "`/goal <amount>` (or `/bounty <amount>`): set the amount the task needs"
     " (maintainers)",
     "`/goal <montant>` (ou `/bounty <montant>`) : fixer le montant dont la tâche a besoin"
     " (mainteneurs)"),
    ("deadline", "`/deadline <YYYY-MM-DD>`: the day the goal must be reached by, or every backer"
     " is refunded (maintainers)",
     "`/deadline <AAAA-MM-JJ>` : le jour où l'objectif doit être atteint, faute de quoi chaque"
     " donateur est remboursé (mainteneurs)"),
    ("claim", "`/claim`: claim the funded task, or join the waiting list",
     "`/claim` : réserver la tâche financée, ou rejoindre la liste d'attente"),
    ("unclaim", "`/unclaim`: release your claim; `/unclaim @dev` revokes someone's"
     " (maintainers)",
     "`/unclaim` : libérer votre réservation ; `/unclaim @dev` retire celle de quelqu'un"
     " (mainteneurs)"),
    ("award", "`/award @dev [<amount or %>] ...`: choose who is paid, or split the payout,"
     " like `/award @alice 60% @bob 40%` (maintainers)",
     "`/award @dev [<montant ou %>] ...` : choisir qui est payé, ou partager le paiement, comme"
     " `/award @alice 60 % @bob 40 %` (mainteneurs)"),
    ("cancel", "`/cancel`: cancel the task and refund every backer (maintainers)",
     "`/cancel` : annuler la tâche et rembourser tous les donateurs (mainteneurs)"),
    ("dispute", "`/dispute <reason>`: hold the payout of merged work before it is released, until"
     " a maintainer decides (backers and maintainers)",
     "`/dispute <raison>` : bloquer le versement d'un travail fusionné avant sa libération,"
     " jusqu'à la décision d'un mainteneur (donateurs et mainteneurs)"),
    ("payout-account", "`/payout-account`: get a link to set up the account your payouts are"
     " sent to (when the service pays through Stripe)",
     "`/payout-account` : recevoir un lien pour configurer le compte sur lequel vos versements"
     " sont envoyés (quand le service paie par Stripe)"),
    ("status", "`/status`: show where the task stands",
     "`/status` : voir où en est la tâche"),
    ("help", "`/help`: show this list", "`/help` : afficher cette liste"),
]
for _name, _en, _fr in _HELP:
    register(f"command.help.{_name}", _en, _fr)
register(
    "command.help.intro",
    "bountybot reads one command per line, at the start of the line (`@{bot} pledge 20` works"
    " too):",
    "bountybot lit une commande par ligne, en début de ligne (`@{bot} pledge 20` marche aussi) :",
)


def help_text(locale: str, bot_login: str) -> str:
    """The command list as a Markdown list, in the locale's language."""
    bot = bot_login.strip().removeprefix("@").removesuffix("[bot]") or "bountybot"
    lines = [translate(locale, "command.help.intro", bot=shown(bot))]
    lines += [f"- {translate(locale, f'command.help.{name}')}" for name, _, _ in _HELP]
    return "\n".join(lines)


register(
    "command.dispute_reason",
    "Say why you dispute the payout: `/dispute the fix does not work on Windows`.",
    "Dites pourquoi vous contestez le versement : `/dispute le correctif ne marche pas sous"
    " Windows`.",
)
register(
    "command.unknown",
    "`{raw}` is not a bountybot command. Write `/help` to see the list.",
    "`{raw}` n'est pas une commande de bountybot. Écrivez `/help` pour en voir la liste.",
)
register(
    "command.no_arguments",
    "`{raw}`: `/{command}` takes nothing after it. Write `/{command}` alone on its line, and"
    " anything else on another line.",
    "`{raw}` : `/{command}` ne prend rien après lui. Écrivez `/{command}` seul sur sa ligne, et"
    " le reste sur une autre ligne.",
)
register(
    "command.extra_text",
    "`{raw}` has more after `/{command}` than bountybot reads: write `{example}` alone on its"
    " line, and your words on another line.",
    "`{raw}` contient plus que ce que bountybot lit après `/{command}` : écrivez `{example}` seul"
    " sur sa ligne, et vos mots sur une autre ligne.",
)
register(
    "command.deadline_missing",
    "Write a date after `/deadline`, as year-month-day, like `/deadline {example}`.",
    "Indiquez une date après `/deadline`, sous la forme année-mois-jour, par exemple"
    " `/deadline {example}`.",
)
register(
    "command.bad_date",
    "`/deadline {value}` is not a date bountybot can read: write a real day as year-month-day,"
    " like `/deadline {example}`.",
    "`/deadline {value}` n'est pas une date que bountybot sait lire : écrivez un jour qui existe"
    " sous la forme année-mois-jour, par exemple `/deadline {example}`.",
)
register(
    "command.bad_login",
    "`{value}` is not a user login: write it with its `@`, like `{example}`.",
    "`{value}` n'est pas un identifiant d'utilisateur : écrivez-le avec son `@`, par exemple"
    " `{example}`.",
)
register(
    "command.award_missing",
    "Write who is paid after `/award`, like `/award @alice`, or a split like"
    " `/award @alice 60% @bob 40%`.",
    "Indiquez qui est payé après `/award`, par exemple `/award @alice`, ou un partage comme"
    " `/award @alice 60 % @bob 40 %`.",
)
register(
    "command.award_share",
    "`{value}` is not a share: give `@{login}` an amount, a percentage, or nothing for the rest,"
    " like `/award @alice 30 @bob` or `/award @alice 60% @bob 40%`.",
    "`{value}` n'est pas une part : donnez à `@{login}` un montant, un pourcentage, ou rien pour"
    " le reste, par exemple `/award @alice 30 @bob` ou `/award @alice 60 % @bob 40 %`.",
)
register(
    "command.award_duplicate",
    "`@{login}` is named twice in `/award`: give each developer one share, like"
    " `/award @alice 60% @bob 40%`.",
    "`@{login}` apparaît deux fois dans `/award` : donnez une seule part à chaque développeur,"
    " par exemple `/award @alice 60 % @bob 40 %`.",
)
register(
    "command.award_rest",
    "Only one developer can take the rest, but `@{first}` and `@{second}` both have no amount:"
    " give all but one an amount or a percentage, like `/award @alice 30 @bob`.",
    "Un seul développeur peut recevoir le reste, mais ni `@{first}` ni `@{second}` n'a de"
    " montant : donnez un montant ou un pourcentage à tous sauf un, par exemple"
    " `/award @alice 30 @bob`.",
)
register(
    "command.too_many",
    "`{raw}` and the commands after it were not read: bountybot reads at most {max} commands"
    " per comment. Write the others in a new comment.",
    "`{raw}` et les commandes suivantes n'ont pas été lues : bountybot lit au plus {max}"
    " commandes par commentaire. Écrivez les autres dans un nouveau commentaire.",
)
register(
    "command.too_long",
    "`{raw}` is longer than {max} characters, so bountybot did not read it. Write the command on"
    " a short line, like `/pledge 20`.",
    "`{raw}` dépasse {max} caractères, donc bountybot ne l'a pas lue. Écrivez la commande sur une"
    " ligne courte, par exemple `/pledge 20`.",
)
