"""Payment providers: they move the real money; the ledger records what they did."""
