"""The arena: a local, blind side-by-side comparison page whose votes become preference data.

``votes`` (the vote file: rows in TRL's preference format, durable appends, reading back),
``ratings`` (win rates with CIs, Bradley–Terry ratings on the Elo scale), ``app`` (the
Starlette web app) and ``command`` (``rlhf-lab arena``: serve, or ``--report``).
"""
