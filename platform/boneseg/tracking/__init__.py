"""MLflow at the edge: the run tree (`runs`) and the model registry (`registry`).
The only package that imports mlflow."""
