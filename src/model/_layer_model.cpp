// layer src/model
