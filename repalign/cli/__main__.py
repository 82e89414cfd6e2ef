from repalign.cli.main import app

app()
