"""DialSum Pipeline: dialogue summarization training library (never imports celery)."""
