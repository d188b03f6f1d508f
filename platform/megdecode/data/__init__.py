"""Data: the THINGS-MEG reader, the MEG twin, preprocessing, splits and the epoch store."""
