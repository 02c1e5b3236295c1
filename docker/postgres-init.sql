-- Runs once, when the pgdata volume is empty: MLflow's store beside the Optuna queue (POSTGRES_DB),
-- in its own database since both keep an alembic_version table.
CREATE DATABASE mlflow;
