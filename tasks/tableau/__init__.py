"""tasks/tableau"""
