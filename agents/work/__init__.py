"""The agents' real work, kept free of any transport.

Each agent's action handler is a thin wrapper over a function here, so the work can be
tested (and reused from a script) without a mesh. Every function takes and returns values
the codec carries as they are: dicts, lists, str, int, float, bytes, bool, None and numeric
numpy arrays.

Modules: ``datasets`` (collection), ``preprocess`` (imputation, scaling, split, describe),
``ticks`` (streaming tick analysis and a synthetic source), ``hyperparams`` (the model
catalogue), ``models`` (training with progress, evaluation), ``artifacts`` (safe model
bytes), ``online`` (next-move prediction), ``deployment`` (versioned registry with hot
swap), ``batching`` (asyncio micro-batcher), ``alerts`` (notification), ``pipeline`` (the
two scenarios' steps, one call each), ``errors`` (this package's leaves of the error tree).
"""
