"""After a quarantine: who uploaded it and where (attribution), and the actions on Lemmy."""
