"""`driftlm follow`: continuous mode, the controller that keeps a served model fresh on a live source."""
