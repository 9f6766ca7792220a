"""Optimizer-side pieces shared by the stages (learning-rate schedules)."""
