"""The Streamlit app over the store and the query library."""
