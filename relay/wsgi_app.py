"""The app as a module attribute, for ``relay serve`` and servers outside the repository."""

from relay import create_app

app = create_app()
