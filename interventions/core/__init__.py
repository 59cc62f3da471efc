"""Model access: load and freeze a backbone (:mod:`.backbone`; big-model dispatch and offload in
:mod:`.dispatch`), the per-architecture table of
intervention sites (:mod:`.sites`), the one hook system that edits and records activations
(:mod:`.hooks`), the key/value-cache keyword of the installed transformers (:mod:`.kv_cache`),
the batch contracts every data module serves (:mod:`.batch`), the early checks of a backbone
name and architecture (:mod:`.hub`) and the project's one-line configuration errors
(:mod:`.errors`).

Imports nothing else of the project."""
