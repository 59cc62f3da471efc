"""Model access: load and freeze a backbone (:mod:`.backbone`; big-model dispatch and offload in
:mod:`.dispatch`), the per-architecture table of
intervention sites (:mod:`.sites`), the one hook system that edits and records activations
(:mod:`.hooks`), the key/value-cache keyword of the installed transformers (:mod:`.kv_cache`)
and the batch contracts every data module serves (:mod:`.batch`).

Imports nothing else of the project."""
