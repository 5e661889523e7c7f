"""Data capture: what a served model was asked and answered, in SageMaker Data Capture's files.

    records.py   the record format and the hourly file layout: written, and read back (torn lines skipped)
    writer.py    CaptureWriter: sampling, a bounded queue, one writer thread, hourly files, S3 uploads

``dogbreed serve --capture DEST`` writes them; ``dogbreed monitor run --capture DEST`` reads them.
"""
