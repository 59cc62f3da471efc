"""What a run leaves behind: :class:`.artifacts.RunArtifacts` writes metrics.json, plots, exports,
the W&B artifact and the checkpoint in one place; :mod:`.plots` draws the figures;
:class:`.computed.ComputedModule` is the base of methods that compute rather than train."""
