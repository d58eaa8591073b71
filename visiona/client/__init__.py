"""Client commands for users: log in, upload and download models, list devices."""
