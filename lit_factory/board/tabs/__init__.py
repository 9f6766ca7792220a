"""One module per tab of the board; each adds its components and handlers to the open ``gr.Blocks``."""
