// layer src/text
