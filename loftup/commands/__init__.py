"""The verbs that are not a layer of their own: `upsample`, `demo`, `viz` (with `explain`, what
viz computes, and `pictures`, the one drawing module). Each imports only typer and the stdlib at
the top; the CLI registers them."""
