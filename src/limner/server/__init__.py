"""The limner server (``limner serve``): OpenAI- and A1111-compatible APIs, a durable job
queue and a web gallery, on FastAPI. Needs the ``server`` extra: pip install 'limner[server]'."""
