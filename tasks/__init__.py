"""The Celery layer: thin tasks that (de)serialize, route, retry and report, then call ``pipeline``."""
