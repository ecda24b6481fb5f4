from qaudit.cli.main import entry

entry()
