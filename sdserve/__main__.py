from sdserve.cli import app

app(prog_name="sdserve")
