// layer src/backend
