"""Operations around the core: Ray (distributed), MLflow (store, runs, registry, the pyfunc model and
its card) and scheduled retraining. The only layer that imports ray or mlflow.
"""
