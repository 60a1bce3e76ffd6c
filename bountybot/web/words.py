"""The public pages' sentences, in English and French (`page.*` keys of `bountybot.i18n`)."""

from __future__ import annotations

from bountybot.i18n import register

_WORDS: list[tuple[str, str, str]] = [
    ("site", "bountybot", "bountybot"),
    ("skip", "Skip to the content", "Aller au contenu"),
    ("home", "All projects", "Tous les projets"),
    ("repos", "Projects", "Projets"),
    ("no_repos", "No project has a bounty yet.", "Aucun projet n’a encore de prime."),
    ("open_tasks", "Open tasks", "Tâches ouvertes"),
    ("no_tasks", "No open task.", "Aucune tâche ouverte."),
    ("task", "Task", "Tâche"),
    ("goal", "Goal", "Objectif"),
    ("no_goal", "no goal", "sans objectif"),
    ("held", "Held", "Réuni"),
    ("funded", "Funded", "Financé"),
    ("backers", "Backers", "Soutiens"),
    ("state", "State", "État"),
    ("age", "Age", "Âge"),
    ("age_days", "{days} d", "{days} j"),
    ("meter", "{held} of {goal}", "{held} sur {goal}"),
    ("meter_name", "Funding of #{number}: {held} of {goal}",
     "Financement de #{number} : {held} sur {goal}"),
    ("reached", "Goal reached", "Objectif atteint"),
    ("appeal_all", "This month, across all projects", "Ce mois-ci, tous projets confondus"),
    ("appeal", "This month’s needs", "Les besoins du mois"),
    ("sentence",
     "{month}: {asked} asked across {tasks} tasks, {funded} funded ({percent}), {to_go} to go,"
     " {days} days left.",
     "{month} : {asked} demandés pour {tasks} tâches, {funded} financés ({percent}), {to_go}"
     " restants, encore {days} jours."),
    ("sentence_past",
     "{month}: {asked} asked across {tasks} tasks, {funded} funded ({percent}), {to_go} short.",
     "{month} : {asked} demandés pour {tasks} tâches, {funded} financés ({percent}), il a"
     " manqué {to_go}."),
    ("sentence_none", "{month}: nothing asked.", "{month} : rien de demandé."),
    ("appeal_meter", "{month}: {funded} of {asked} funded", "{month} : {funded} sur {asked}"
     " financés"),
    ("for", "What the money is for", "À quoi sert l’argent"),
    ("did", "What the money did", "Ce que l’argent a fait"),
    ("no_payouts", "No payout settled this month.", "Aucun paiement réglé ce mois-ci."),
    ("paid_to", "{amount} paid to {developer} for #{number}", "{amount} versés à {developer}"
     " pour #{number}"),
    ("merged_pr", "merged pull request #{number}", "pull request #{number} fusionnée"),
    ("refunds", "Refunds", "Remboursements"),
    ("no_refunds", "No refund this month.", "Aucun remboursement ce mois-ci."),
    ("refund", "{amount} back to {backer} (#{number}, {why})", "{amount} rendus à {backer}"
     " (#{number}, {why})"),
    ("why.withdrawn", "withdrawn", "retiré"),
    ("history", "The last twelve months", "Les douze derniers mois"),
    ("month", "Month", "Mois"),
    ("asked", "Asked", "Demandé"),
    ("percent", "%", "%"),
    ("pledged", "Pledged", "Promis"),
    ("paid_out", "Paid out", "Versé"),
    ("refunded", "Refunded", "Remboursé"),
    ("needs_link", "The monthly appeal", "L’appel du mois"),
    ("earlier", "Previous month", "Mois précédent"),
    ("later", "Next month", "Mois suivant"),
    ("badge", "Badge for a README", "Badge pour un README"),
    ("issue_link", "The issue on the forge", "Le ticket sur la forge"),
    ("timeline", "Timeline", "Chronologie"),
    ("when", "When", "Quand"),
    ("what", "What", "Quoi"),
    ("ev.task.open", "Bounty opened", "Prime ouverte"),
    ("ev.pledge.held", "{who} pledged {amount}", "{who} a promis {amount}"),
    ("ev.task.funded", "Goal reached", "Objectif atteint"),
    ("ev.claim.active", "{who} claimed the task", "{who} a pris la tâche"),
    ("ev.link.open", "{who} opened pull request #{number}",
     "{who} a ouvert la pull request #{number}"),
    ("ev.link.merged", "Pull request #{number} merged", "Pull request #{number} fusionnée"),
    ("ev.payout.pending", "{amount} due to {who}", "{amount} dus à {who}"),
    ("ev.payout.paid", "{amount} paid to {who}", "{amount} versés à {who}"),
    ("ev.pledge.refunded", "{amount} refunded to {who}", "{amount} remboursés à {who}"),
    ("ev.pledge.withdrawn", "{who} withdrew {amount}", "{who} a retiré {amount}"),
    ("ev.task.done", "Done", "Terminée"),
    ("ev.task.cancelled", "Cancelled", "Annulée"),
    ("ev.task.expired", "Expired", "Expirée"),
    ("reference", "reference {reference}", "référence {reference}"),
    ("how", "How to take part", "Comment participer"),
    ("how_back", "To back it, comment on the issue:", "Pour la soutenir, commentez le ticket :"),
    ("how_claim", "To work on it, comment:", "Pour y travailler, commentez :"),
    ("no_backers", "No backer yet.", "Pas encore de soutien."),
    ("claimed_by", "Claimed by {who}", "Prise par {who}"),
    ("not_found.page", "There is no page at this address.", "Il n’y a pas de page à cette"
     " adresse."),
    ("not_found.repo", "No public project {path} on {forge}.", "Aucun projet public {path} sur"
     " {forge}."),
    ("not_found.task", "No bounty on issue #{number} of {path}.", "Aucune prime sur le ticket"
     " #{number} de {path}."),
    ("not_found.task_id", "No task {id}.", "Aucune tâche {id}."),
    ("not_found.month", "No appeal for {month}.", "Aucun appel pour {month}."),
    ("not_found.title", "Not found", "Introuvable"),
    ("busy", "Too many readers at once; try again in a few seconds.",
     "Trop de lecteurs à la fois ; réessayez dans quelques secondes."),
    ("language", "Language", "Langue"),
]

for key, en, fr in _WORDS:
    register(f"page.{key}", en, fr)
