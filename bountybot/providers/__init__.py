"""Payment providers as the rules see them: pure descriptions (what a pledge starts as, what a
payout becomes), no money moved here. The manual provider moves no money at all; Stripe's calls
and webhooks are the edge in `bountybot.payments`."""
