"""Downloads that resume, retry and verify (Drive pages included), and safe archive extraction (`fetch`)."""
