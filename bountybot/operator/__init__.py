"""The operator's actions on the books, under the command line: pending pledges and confirming
them, payouts due and marking one paid, the inbox's deliveries, the outbox's messages, the repos
and their privacy.

Apart from `bountybot.cli`, which only parses and prints: the demo and the tests call them too.
"""
