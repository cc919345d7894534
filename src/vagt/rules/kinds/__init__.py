"""One module per rule kind: `evaluate()` over a batch, and `tick()` where time alone can
fire or clear (a deadline passing without a message)."""
