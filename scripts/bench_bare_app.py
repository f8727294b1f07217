"""The baseline of `scripts/bench --only api`: a bare Flask route returning a small JSON object of the size
of a fine-tuning job, served by gunicorn with exactly the API's settings (api/__main__.py)."""
from flask import Flask, jsonify

JOB = {"object": "fine_tuning.job", "id": "ftjob-0123456789abcdef01234567", "model": "smollm2-135m-instruct",
       "created_at": 1764400000, "finished_at": None, "fine_tuned_model": None, "organization_id": "bench",
       "result_files": [], "status": "queued", "validation_file": None, "training_file": "file-0123456789",
       "hyperparameters": {"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 1.0}, "trained_tokens": None,
       "error": None, "user_provided_suffix": None, "seed": 1, "estimated_finish": None, "integrations": [],
       "metadata": None, "method": {"type": "supervised"}}


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/v1/fine_tuning/jobs/<job_id>")
    def job(job_id: str):
        return jsonify({**JOB, "id": job_id})

    return app
