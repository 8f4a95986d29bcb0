"""Training recipes for the embedded zoo models (`python -m interp.zoo.train NAME`)."""
