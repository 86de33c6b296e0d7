"""Building the result objects: one module per IOD (SR, Secondary Captures, GSPS,
Parametric Map, rejection note), their codes and the AI series conventions."""
