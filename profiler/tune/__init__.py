"""`specdec tune`: search the draft's training hyperparameters by measured serving acceptance.

    specdec tune --space space.json --strategy hyperband|grid|random|tpe --ledger tune.jsonl
        [--seed-from prior.json] [--dry-run] [--runner local-eagle3|synthetic] [--seed N]

Modules: :mod:`.space` (space.json, the global batch -> launcher mapping), :mod:`.hyperband` (brackets),
:mod:`.ledger` (durable JSONL), :mod:`.runner` (the :class:`~.runner.TrialRunner` protocol), :mod:`.engine`
(the search, promotion, verdict), :mod:`.cli`.
"""

from .cli import add_parser  # noqa: F401
