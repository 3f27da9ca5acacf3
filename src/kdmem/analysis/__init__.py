"""Analysis: which examples each model memorizes, where they come from, and whether that can be
predicted before distillation (overlaps, features, predictor, filtering, comparison, figures)."""
