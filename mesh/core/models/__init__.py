"""What a model is on the wire and on disk: tensor signatures, input checks,
and the manifest that pins each file's sha256."""
