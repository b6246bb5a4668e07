"""The baseline for bench/throughput.py: a Flask endpoint that only answers 200."""
from flask import Flask

app = Flask(__name__)


@app.post("/webhooks/aircall")
def webhook():
    return "", 200
