"""Tensor math with no model or data in it: losses, advantages, KL estimators, log-probs."""
