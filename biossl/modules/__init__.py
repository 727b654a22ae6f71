"""Lightning training code, the only place it lives: the pretraining module, its data module, callbacks."""
