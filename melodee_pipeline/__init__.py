"""melodee-pipeline: moves new music from Melodee's inbound library into staging."""
