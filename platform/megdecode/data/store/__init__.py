"""The epoch store's reading side: manifest, integrity checks and readers (local, Ray Data).

`megdecode.data.shards` writes stores and re-exports the public names of these modules.
"""
