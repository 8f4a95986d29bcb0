"""Training recipes for the embedded zoo models (`python -m recipes.train NAME`)."""
