"""The active-learning loop: labels back to training sets (``trainset``), model-label
disagreements and annotator quality (``review``), the stopping criteria that gate
retraining (``gate``), training, evaluation and promotion (``training``), and a closed-loop
simulation against uniform and random sampling (``simulate``)."""
