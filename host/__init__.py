"""host: arrives with its issue."""

__all__: list[str] = []
