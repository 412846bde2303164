"""Each family's objective as a pure function of (networks, batch, options), as DiT's ``training_losses``:
the LightningModule only wires networks, data and optimiser to it. One module per family."""
