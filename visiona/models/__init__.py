"""Models: AI model records, their files in object storage, upload and download."""
