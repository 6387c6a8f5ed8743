"""Frame selection: which frames are worth a label.

The engine keeps Lightly Worker's config shape (``n_samples`` / ``proportion_samples`` and
``strategies: [{input, strategy}]``) and its score names; one module per concern:

- ``spec``: the strategies config and its validation (errors name ``strategies[i].<key>``)
- ``inputs`` / ``result``: what a selection reads (per frame) and what it returns
- ``scores``: Lightly's active-learning scores from predictions
- objectives, one module each: ``diversity``, ``weights``, ``threshold``, ``balance``,
  ``similarity``, ``typicality``, ``random_values``
- ``engine``: thresholds first, then the greedy pick over the product of the objectives;
  ``sequences``: runs of neighbouring frames around each pick
- ``shards``: distributed greedy (per-shard winners, merged by a second pass)
- ``metrics``: coverage of a selection
- ``datapool``: frames selected by earlier runs; ``batch``: the ingest run's selection
  stage; ``report``: the HTML report; ``presets``: named recipes for the trigger form
"""
