"""One package per paper: its algorithm in plain functions and its LightningModule beside them."""
