"""The `lit-dr` commands: the LightningCLI (fit, validate, test, predict), export, index, search, pipeline."""
